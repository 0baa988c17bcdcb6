"""HTTP service: a thin FastAPI shell over one :class:`clipserve.encoder.Encoder`."""
