from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Invoice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seller_no", models.IntegerField()),
                ("invoice_date", models.DateField()),
                ("invoice_amt", models.DecimalField(max_digits=12, decimal_places=2)),
                ("region", models.CharField(max_length=20, default="")),
            ],
        ),
    ]
