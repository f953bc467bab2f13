"""What people see, and what the log says, when a page fails: a sentence they can act on, a traceback for whoever
runs the platform."""

import html

from ..live import wait_until


def test_a_page_asked_for_while_postgres_is_down_says_so_with_a_503(platform, postgres, studio):
    postgres.stop()
    page = platform.get(studio["list_path"], studio)
    assert page.status_code == 503
    sentence = "The platform's database is unreachable; nothing was changed. Try again in a minute."
    assert sentence in html.unescape(page.text)


def test_a_session_page_asked_for_while_postgres_is_down_says_so_with_a_503(platform, postgres, studio):
    """The proxy's requests meet the database before anything else (the access is read from it)."""
    postgres.stop()
    page = platform.get_session("/lab", studio)
    assert page.status_code == 503
    assert "The platform's database is unreachable; nothing was changed." in html.unescape(page.text)


def test_a_server_error_shows_the_500_page_and_is_logged_with_its_traceback(platform, postgres, studio):
    """The database lacks a table the code expects, as after a deployment that skipped a migration."""
    postgres.query("ALTER TABLE studios_studio RENAME TO studios_studio_elsewhere")
    try:
        page = platform.get(studio["list_path"], studio)
    finally:
        postgres.query("ALTER TABLE studios_studio_elsewhere RENAME TO studios_studio")
    logged = f"ERROR django.request Internal Server Error: {studio['list_path']}\nTraceback"
    wait_until(lambda: logged in platform.log(), 5, "the error in the platform's log")
    assert 'relation "studios_studio" does not exist' in platform.log()
    assert page.status_code == 500 and "Something went wrong" in page.text
