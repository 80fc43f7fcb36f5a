"""Where videos come from: the synthetic generator, dataset adapters and the manifest."""
