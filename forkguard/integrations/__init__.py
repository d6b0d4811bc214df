"""Small integrations with libraries whose state does not survive a fork; each imports nothing at load."""
