"""Pure tensor math shared by every method: imports torch only, holds no trainer state."""
