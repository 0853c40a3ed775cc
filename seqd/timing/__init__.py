"""When a step may go: zones, send windows, quiet hours and due times, decided in the process.

Pure code (no I/O, no clock: every function takes the time in ms), shared by the dispatcher,
the enroll path and the preview, so what the preview shows is what the dispatcher does.
"""
