"""Scripts of the breast mass classification bundle (benign vs malignant, CBIS-DDSM layout)."""
