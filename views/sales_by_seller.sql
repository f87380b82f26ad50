SELECT seller_no,
       sum(sales_amt) AS total_sales,
       count(*) AS active_days,
       max(invoice_date) AS last_sale
FROM sales_summary
GROUP BY seller_no
