import java.io.IOException;
import java.util.concurrent.TimeUnit;

import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;

/**
 * A tool call and a JSON-schema answer from llm_api's OpenAI-compatible API with plain okhttp 3.
 *
 * <p>1. Asks about the weather with a {@code get_weather} tool that the model must call
 * ({@code tool_choice} names it), and prints the call. 2. Sends a made-up result back as a
 * {@code tool} message and prints the model's answer. 3. Asks for a city as JSON valid against a
 * schema ({@code response_format} {@code json_schema}) and prints it.
 *
 * <p>Usage: {@code java ToolsAndJson BASE_URL}. Prints three lines: {@code call <id> <name> <arguments>},
 * {@code answer <finish_reason> <text>} and {@code json <finish_reason> <content>}.
 */
public final class ToolsAndJson {
    private static final MediaType JSON = MediaType.parse("application/json; charset=utf-8");
    private static final String PARAMETERS = "{\"type\":\"object\",\"properties\":{"
            + "\"city\":{\"type\":\"string\",\"maxLength\":24},"
            + "\"unit\":{\"enum\":[\"celsius\",\"fahrenheit\"]}},"
            + "\"required\":[\"city\",\"unit\"],\"additionalProperties\":false}";
    private static final String TOOLS = "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
            + "\"description\":\"The current weather in a city\",\"parameters\":" + PARAMETERS + "}}]";
    private static final String QUESTION = "{\"role\":\"user\",\"content\":\"What is the weather in Paris?\"}";
    private static final String CITY_SCHEMA = "{\"type\":\"object\",\"properties\":{"
            + "\"name\":{\"type\":\"string\",\"maxLength\":24},"
            + "\"country\":{\"type\":\"string\",\"maxLength\":24},"
            + "\"population_millions\":{\"type\":\"number\",\"minimum\":0,\"maximum\":40}},"
            + "\"required\":[\"name\",\"country\",\"population_millions\"],\"additionalProperties\":false}";

    private static final OkHttpClient CLIENT = new OkHttpClient.Builder().readTimeout(300, TimeUnit.SECONDS).build();

    public static void main(String[] args) throws IOException {
        if (args.length < 1) {
            System.err.println("usage: ToolsAndJson BASE_URL");
            System.exit(2);
        }
        String url = args[0] + "/v1/chat/completions";

        // 1. The model must call get_weather.
        String called = post(url, "{\"model\":\"chatglm3-6b\",\"temperature\":0,\"max_tokens\":60,\"messages\":[" + QUESTION
                + "],\"tools\":" + TOOLS
                + ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}");
        int calls = called.indexOf("\"tool_calls\":");
        String id = Json.stringField(called, "id", calls);
        String name = Json.stringField(called, "name", calls);
        String arguments = Json.stringField(called, "arguments", calls);
        System.out.println("call " + id + " " + name + " " + arguments);

        // 2. The tool's result goes back; the model answers in text.
        String assistant = "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":" + Json.quote(id)
                + ",\"type\":\"function\",\"function\":{\"name\":" + Json.quote(name) + ",\"arguments\":"
                + Json.quote(arguments) + "}}]}";
        String result = "{\"role\":\"tool\",\"tool_call_id\":" + Json.quote(id)
                + ",\"content\":\"{\\\"celsius\\\": 21, \\\"sky\\\": \\\"sunny\\\"}\"}";
        String answered = post(url, "{\"model\":\"chatglm3-6b\",\"temperature\":0,\"max_tokens\":40,\"messages\":[" + QUESTION
                + "," + assistant + "," + result + "],\"tools\":" + TOOLS + ",\"tool_choice\":\"none\"}");
        System.out.println("answer " + Json.stringField(answered, "finish_reason", 0) + " "
                + Json.stringField(answered, "content", 0).replace('\n', ' '));

        // 3. A JSON answer valid against a schema.
        String city = post(url, "{\"model\":\"chatglm3-6b\",\"temperature\":0,\"max_tokens\":60,\"messages\":[{\"role\":\"user\","
                + "\"content\":\"Describe Paris as JSON: name, country, population.\"}],\"response_format\":"
                + "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"city\",\"strict\":true,\"schema\":"
                + CITY_SCHEMA + "}}}");
        System.out.println("json " + Json.stringField(city, "finish_reason", 0) + " "
                + Json.stringField(city, "content", 0));
    }

    private static String post(String url, String body) throws IOException {
        Request request = new Request.Builder().url(url).post(RequestBody.create(JSON, body)).build();
        try (Response response = CLIENT.newCall(request).execute()) {
            String text = response.body().string();
            if (!response.isSuccessful()) {
                System.err.println("HTTP " + response.code() + ": " + text);
                System.exit(1);
            }
            return text;
        }
    }

    /** Just enough JSON for this example: quote a string, read a string field after a position. */
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

        /** The first string value of {@code "name"} at or after {@code from} (the server writes no spaces). */
        static String stringField(String json, String name, int from) {
            String key = "\"" + name + "\":\"";
            int start = json.indexOf(key, Math.max(from, 0));
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
