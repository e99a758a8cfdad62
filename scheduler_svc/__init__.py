"""The llmos scheduler (`llmos scheduler`): answers ScheduleRequest batches with
placements from a pluggable policy (`scheduler_svc.policies`)."""
