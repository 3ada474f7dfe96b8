"""The only place that runs processes: on this machine (process), over SSH (remote), and the Host interface both meet."""
