"""The `lastmile` command: one entry point for the van, the locker, the depot and the simulator.

The only product package allowed to import `simulators` (for `lastmile sim`); it imports every
subcommand's package lazily, so `lastmile identify` loads neither the depot nor OpenCV.
"""
