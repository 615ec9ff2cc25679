"""The tailnet: the `tailscale` CLI wrapper and the exposure gate."""
