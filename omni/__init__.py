"""μOmni: a tiny from-scratch omni model (text, image, speech in; text, speech out)."""
