"""Prefect artifact keys: one per kind and variant, so variants never overwrite each other."""

import re


def artifact_key(kind: str, subject: str) -> str:
    """`confusion-matrix-resnet`: Prefect keys take lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", f"{kind}-{subject}".lower()).strip("-")
