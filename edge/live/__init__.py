"""The live path: sources, the capture thread and its frame ring, the loop, sinks, the preview page, annotation."""
