"""The built-in synthetic world: procedural scenes, a torch ray caster, appearance conditions,
trajectories and exact correspondences."""
