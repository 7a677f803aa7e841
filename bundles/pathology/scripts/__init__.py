"""Scripts of the pathology bundle: network, transforms, phantom, layout reader, metrics, inference."""
