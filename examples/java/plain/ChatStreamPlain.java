import java.io.IOException;
import java.util.concurrent.TimeUnit;

import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;
import okio.BufferedSource;

/**
 * Streams an answer from llm_api with plain okhttp 3 (no okhttp-sse module), reading the
 * text/event-stream body line by line with the same rules as okhttp-sse's reader: "field: value"
 * lines, "data" lines joined by "\n", comment lines (":") ignored, an event dispatched at a blank line.
 *
 * <p>Usage: {@code java ChatStreamPlain BASE_URL PROMPT [TEMPERATURE] [MAX_TOKENS]}. Tokens go to
 * stdout as they arrive; the finish (or error) event goes to stderr.
 */
public final class ChatStreamPlain {
    private static final MediaType JSON = MediaType.parse("application/json; charset=utf-8");

    public static void main(String[] args) throws IOException {
        if (args.length < 2) {
            System.err.println("usage: ChatStreamPlain BASE_URL PROMPT [TEMPERATURE] [MAX_TOKENS]");
            System.exit(2);
        }
        String temperature = args.length > 2 ? args[2] : "1.0";
        String maxTokens = args.length > 3 ? args[3] : "512";
        // The lesson's OpenAI-shaped body.
        String body = "{\"model\":\"chatglm3-6b\",\"stream\":true,\"temperature\":" + temperature
                + ",\"max_tokens\":" + maxTokens
                + ",\"messages\":[{\"role\":\"user\",\"content\":" + Json.quote(args[1]) + "}]}";
        OkHttpClient client = new OkHttpClient.Builder().readTimeout(60, TimeUnit.SECONDS).build();
        Request request = new Request.Builder()
                .url(args[0] + "/chat/new/message")
                .header("Accept", "text/event-stream")
                .post(RequestBody.create(JSON, body))
                .build();
        try (Response response = client.newCall(request).execute()) {
            String type = response.header("Content-Type", "");
            if (!response.isSuccessful() || !type.startsWith("text/event-stream")) {
                System.err.println("HTTP " + response.code() + " " + type + ": " + response.body().string());
                System.exit(1);
            }
            BufferedSource source = response.body().source();
            EventReader reader = new EventReader();
            String line;
            while ((line = source.readUtf8Line()) != null) {
                if (reader.line(line)) {
                    return;
                }
            }
            System.err.println("the stream ended without a finish event");
            System.exit(1);
        }
    }

    /** Collects one event's fields; returns true from {@link #line} when the stream is over. */
    static final class EventReader {
        private String id;
        private String type;
        private StringBuilder data;

        boolean line(String line) {
            if (line.isEmpty()) {
                return dispatch();
            }
            if (line.startsWith(":")) {
                return false; // comment (the server's heartbeats)
            }
            int colon = line.indexOf(':');
            String field = colon < 0 ? line : line.substring(0, colon);
            String value = colon < 0 ? "" : line.substring(colon + 1);
            if (value.startsWith(" ")) {
                value = value.substring(1);
            }
            switch (field) {
                case "data":
                    data = data == null ? new StringBuilder(value) : data.append('\n').append(value);
                    break;
                case "event":
                    type = value;
                    break;
                case "id":
                    id = value;
                    break;
                default:
                    break; // "retry" and unknown fields
            }
            return false;
        }

        private boolean dispatch() {
            if (data == null) {
                type = null;
                return false;
            }
            boolean over = onEvent(id, type, data.toString());
            data = null;
            type = null;
            return over;
        }

        /** The same callback shape as okhttp-sse's EventSourceListener.onEvent. */
        private boolean onEvent(String eventId, String eventType, String payload) {
            if (eventType == null) {
                System.out.print(Json.stringField(payload, "text"));
                System.out.flush();
                return false;
            }
            if (eventType.equals("finish")) {
                System.err.println("[finish " + eventId + "] " + payload);
                return true;
            }
            if (eventType.equals("error")) {
                System.err.println("[error " + eventId + "] " + payload);
                System.exit(1);
            }
            return false;
        }
    }

    /** Just enough JSON for this example: quote a string, read one string field. */
    static final class Json {
        static String quote(String text) {
            StringBuilder out = new StringBuilder("\"");
            for (char c : text.toCharArray()) {
                switch (c) {
                    case '"': out.append("\\\""); break;
                    case '\\': out.append("\\\\"); break;
                    case '\n': out.append("\\n"); break;
                    case '\r': out.append("\\r"); break;
                    case '\t': out.append("\\t"); break;
                    default:
                        if (c < 0x20) {
                            out.append(String.format("\\u%04x", (int) c));
                        } else {
                            out.append(c);
                        }
                }
            }
            return out.append('"').toString();
        }

        static String stringField(String json, String name) {
            String key = "\"" + name + "\":\"";
            int start = json.indexOf(key);
            if (start < 0) {
                return "";
            }
            StringBuilder out = new StringBuilder();
            for (int i = start + key.length(); i < json.length(); i++) {
                char c = json.charAt(i);
                if (c == '"') {
                    break;
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char next = json.charAt(++i);
                switch (next) {
                    case 'n': out.append('\n'); break;
                    case 'r': out.append('\r'); break;
                    case 't': out.append('\t'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'u': out.append((char) Integer.parseInt(json.substring(i + 1, i + 5), 16)); i += 4; break;
                    default: out.append(next); break; // \" \\ \/
                }
            }
            return out.toString();
        }
    }
}
