"""Layer 2: minimal and linear absolute-pose solvers and geometric refinement."""
