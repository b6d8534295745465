"""HTTP APIs: sending for services (send.py, tokens.py) and the signed-in user's inbox (inbox.py)."""
