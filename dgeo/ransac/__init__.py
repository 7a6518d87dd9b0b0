"""Layer 2: batched LO-RANSAC for absolute pose, and its differentiable (DSAC) variant."""
