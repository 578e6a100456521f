"""Error analysis of detection results: why a detector fails."""
