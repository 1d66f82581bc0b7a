"""Jobs at the edge (issue 11): what a machine produced during one job and how well it ran.
Pure logic, fed by the engine with the device's point values and machine state; no I/O."""
