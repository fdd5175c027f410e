"""Rigid-body pose trajectories (sequences of SE(3) poses): a torque-free rigid-body simulator
with inertia classes and cached dataset splits (:mod:`.sim`), and metrics recovering
conserved quantities and forecast errors from poses alone (:mod:`.metrics`)."""
