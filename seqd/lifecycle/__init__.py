"""The lifecycle that protects contacts and senders: replies pause, opt-outs and bounces stop.

Inbound SMS and status callbacks (Twilio), inbound email (replies, auto-replies, DSNs),
one-click unsubscribe, and the suppression lists the dispatcher checks at send time.
"""
