"""Scripts of the eye bundle: retinal vessel segmentation in colour fundus photographs (DRIVE layout)."""
