"""Feishu / Lark: event subscription in webhook mode, replies through the IM API."""
