"""Ground-floor helpers shared by every wing: option checks, the packaged default backbone."""
