"""The console scripts: ``quadra-ad`` (train), ``quadra-ad-compare``, ``quadra-ad-predict``,
``quadra-ad-upload`` and their entry points. The only modules that print; everything below them logs.

Kept empty on purpose: ``quadra-ad-predict`` runs on a line PC without torch.
"""
