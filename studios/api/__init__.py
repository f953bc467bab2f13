"""The JSON API under /api/v1/, for scripts and the ``studios`` command.

Built on Django REST framework: its authentication classes carry the personal access tokens, its browsable API
and drf-spectacular's schema document every endpoint. The views stay thin: every action goes through the
lifecycle, the role table and the forms the pages use, so an answer carries the same sentence a page shows.
"""
