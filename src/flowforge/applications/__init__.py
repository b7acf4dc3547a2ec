"""Applications of a trained flow: MAP inpainting with the flow as a prior."""
