# Changing the type of a column that a view reads: PostgreSQL refuses while the view
# exists, so run this migration with `viewkeeper run --drop-first -- python manage.py migrate`.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("invoices", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="invoice",
            name="invoice_amt",
            field=models.DecimalField(max_digits=15, decimal_places=2),
        ),
    ]
