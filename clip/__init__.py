"""CLIP: image and text towers, contrastive losses, zero-shot and retrieval evaluation."""
