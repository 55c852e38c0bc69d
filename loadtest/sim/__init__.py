"""The discrete-event simulator: the gateway's scheduling and control code on a virtual clock."""
