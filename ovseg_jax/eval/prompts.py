"""Prompt templates that turn class names into sentences for the text tower.

Data facts: the 14 templates are ViLD's (Gu et al. 2022) as OVSeg's appendix B, ODISE, MAFT and EBSeg use
them, averaged after normalisation.
"""
SINGLE = ("a photo of a {}.",)

VILD = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

TEMPLATE_SETS = {"single": SINGLE, "vild": VILD}


def templates(name_or_templates: str | tuple[str, ...]) -> tuple[str, ...]:
  """A named set ('single', 'vild') or explicit templates, each with one '{}' for the class name."""
  chosen = TEMPLATE_SETS.get(name_or_templates) if isinstance(name_or_templates, str) else tuple(name_or_templates)
  if chosen is None:
    raise ValueError(f"unknown prompt set {name_or_templates!r}; use one of {sorted(TEMPLATE_SETS)} or a tuple of "
                     "templates with '{}' for the class name.")
  bad = [t for t in chosen if t.count("{}") != 1]
  if not chosen or bad:
    raise ValueError(f"prompt templates {bad or chosen!r} must each hold exactly one '{{}}' for the class name.")
  return chosen
