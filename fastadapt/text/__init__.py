"""Few-shot text: pretrained sentence encoders, their embedding cache, and encoder adaptation."""
