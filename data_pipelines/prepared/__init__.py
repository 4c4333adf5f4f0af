"""Labelled segmentation datasets prepared once as TensorFlow Datasets (sharded TFRecord files, any data dir
tfds reads, gs:// included) from the layouts the directory readers take, and read back by many hosts."""
