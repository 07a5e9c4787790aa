"""Autoscaling: the pure policy (:mod:`.policy`) and the loop that feeds it (:mod:`.loop`)."""
