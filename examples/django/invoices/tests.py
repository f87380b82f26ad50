from django.db import connection
from django.test import TestCase


class ViewsInTheTestDatabase(TestCase):
    def test_the_declared_views_exist(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            self.assertTrue(cursor.fetchone()[0].startswith("test_"))
            for view in ("sales_summary", "sales_by_seller"):
                cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [view])
                self.assertTrue(cursor.fetchone()[0], f"{view} is missing")
