"""Label convention of the dataset (the TFDS order): 0 = parasitized, 1 = uninfected."""

PARASITIZED = 0
UNINFECTED = 1
LABEL_NAMES: tuple[str, str] = ("parasitized", "uninfected")
CLASS_FOLDERS: tuple[str, str] = ("Parasitized", "Uninfected")
"""Folder names of the NIH layout, indexed by label."""
