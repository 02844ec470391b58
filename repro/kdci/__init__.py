"""KDCI (Wang et al., CVPR 2024): confounder dictionary, causal intervention, and the method wrapper."""
