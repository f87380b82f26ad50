# Changes the type of a column that the order_totals materialized view reads. Run it with
# `viewkeeper run --drop-first -- bin/rails db:migrate`.
class WidenOrderAmount < ActiveRecord::Migration[7.1]
  def change
    change_column :orders, :amount, :decimal, precision: 15, scale: 2
  end
end
