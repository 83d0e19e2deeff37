"""Local fakes of the providers meterd talks to, each checking what the real one checks."""
