# Django drops the column with CASCADE: PostgreSQL drops sales_summary, which read it, and
# sales_by_seller with it. viewkeeper's post_migrate handler creates them again from views/,
# which this change updated to stop reading region.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("invoices", "0001_initial")]

    operations = [migrations.RemoveField(model_name="invoice", name="region")]
