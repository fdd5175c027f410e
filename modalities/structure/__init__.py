"""Protein-backbone and rigid-body structure generation (SE(3) flows): data readers so far."""
