// A JDBC client of `ccstream serve`, as DBeaver and BI tools use the PostgreSQL driver:
// connect, DatabaseMetaData.getTables / getColumns, a prepared statement with parameters.
// Run by tests/serve.rs: java -cp postgresql.jar JdbcProbe.java URL USER PASSWORD
// Prints one `key value` line per finding; exits 1 on any failure.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.List;

public class JdbcProbe {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("product " + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, null, "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME"));
                }
            }
            System.out.println("tables " + String.join(",", tables));
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "call_facts", "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                }
            }
            System.out.println("columns " + String.join(",", columns));
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT tenant_id, count(*) AS calls, max(queued_at) AS last FROM call_facts "
                            + "WHERE tenant_id = ? AND queued_at >= ? AND answered = ? GROUP BY tenant_id")) {
                ps.setString(1, args.length > 3 ? args[3] : "t0001");
                ps.setTimestamp(2, Timestamp.valueOf("2020-01-01 00:00:00"));
                ps.setBoolean(3, true);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        System.out.println("row " + rs.getString(1) + " " + rs.getLong(2) + " " + rs.getTimestamp(3).toInstant());
                    }
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT queue_id, offered, service_level FROM interval_metrics_at(60, 'UTC', ?) ORDER BY offered DESC LIMIT 1")) {
                ps.setDouble(1, 30.0);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        System.out.println("sl " + rs.getString(1) + " " + rs.getLong(2));
                    }
                }
            }
        } catch (Exception e) {
            e.printStackTrace();
            System.exit(1);
        }
    }
}
