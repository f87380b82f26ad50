from django.db import models


class Invoice(models.Model):
    seller_no = models.IntegerField()
    invoice_date = models.DateField()
    invoice_amt = models.DecimalField(max_digits=15, decimal_places=2)
