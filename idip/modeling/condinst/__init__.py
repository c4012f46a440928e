"""CondInst: FCOS with a controller, a mask branch and the fused dynamic mask head."""
