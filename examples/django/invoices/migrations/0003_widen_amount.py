# Changing the type of a column that a view reads: PostgreSQL refuses while the view exists,
# so this needs VIEWKEEPER["DROP_FIRST"] (the views are dropped before, restored after).
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("invoices", "0002_remove_region")]

    operations = [
        migrations.AlterField(
            model_name="invoice",
            name="invoice_amt",
            field=models.DecimalField(max_digits=15, decimal_places=2),
        ),
    ]
