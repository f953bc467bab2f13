from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("studios", "0012_lifespan_and_idle_stop")]

    operations = [
        migrations.AddIndex(
            model_name="studio",
            index=models.Index(
                models.F("workspace_id"),
                models.OrderBy(models.F("created"), descending=True),
                models.OrderBy(models.F("id"), descending=True),
                name="studio_list_newest",
            ),
        ),
    ]
