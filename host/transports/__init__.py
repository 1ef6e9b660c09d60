"""pyserial URL handlers of our own (`protocol_<scheme>.py`), registered by host.link."""
