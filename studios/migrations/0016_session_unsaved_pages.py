from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("studios", "0015_session_redeemed_ticket"),
    ]

    operations = [
        migrations.AddField(
            model_name="session",
            name="unsaved_pages",
            field=models.PositiveIntegerField(
                default=0,
                help_text="As it stopped: how many of the pages open in it did not save their documents in time.",
            ),
        ),
    ]
